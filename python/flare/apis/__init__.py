"""Application-facing building blocks shared by the runtime and user code, under NVFlare's module names."""
