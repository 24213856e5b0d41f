"""The topology a city declares: agencies, event types, connectors, joins, subscriptions and
payroll policy; models and checks only."""
