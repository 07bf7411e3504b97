"""What operators use to see a pool from outside: its Prometheus metrics."""
