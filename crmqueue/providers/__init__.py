"""The outside world: email vendors and outbound HTTP."""
