"""params.yaml: one pydantic-validated section per pipeline stage (registry: `pgolf.config.sections`)."""
