"""Jobs: the state machine, the executors, the job body workers run, history and events."""
