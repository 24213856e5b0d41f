"""Reports read from the central store: scorecard, readiness, open data, payroll, staff
reconciliation, evidence."""
