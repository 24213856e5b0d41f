"""The HTTP ingress (`simpul ingress`) and the city's event-type catalogue it serves."""
