"""The worker actor: runs attempts and on_complete deliveries and appends their outcomes to
pendingCompletion."""
