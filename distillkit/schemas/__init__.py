"""What a stage writes for later stages to read, defined once: filter's and train's manifest stats, evaluate's
results.json (publish and compare read them through these models)."""
