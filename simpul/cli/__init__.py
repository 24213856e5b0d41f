"""The face: one module per command group, the demo and the simulator; the only part of `simpul`
that imports streams/, sinks/ and connectors/."""
