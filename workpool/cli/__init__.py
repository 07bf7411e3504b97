"""The command line and the demo: they compose the actors (a client, a worker, a main loop) into
commands."""
