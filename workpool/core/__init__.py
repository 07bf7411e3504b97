"""What every part of a pool shares beyond the wire: validation, logging, failure text, the
registry of jobs, schedules, locating a pool, and the pool's configuration."""
