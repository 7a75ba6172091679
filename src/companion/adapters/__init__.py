"""Adapters between companion and other libraries (diffusers); imported on demand."""
