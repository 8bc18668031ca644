"""Channel selection methods: each scores or orders the channels of a group."""
