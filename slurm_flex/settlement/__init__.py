"""Half-hourly settlement of flexibility orders: Elexon settlement periods of the Europe/London
day, baselines, delivered flexibility, payments and shortfall penalties."""
