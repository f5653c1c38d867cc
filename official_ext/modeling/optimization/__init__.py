"""The paper's optimizer and schedules, registered with Model Garden's factory."""
