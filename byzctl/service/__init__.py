"""`byzctl serve` and `byzctl agent`: training sessions as a service, on byzctl's own engine."""
