"""Whole clips: plan windows and crops, stream windows through the pipeline, run a job on files."""
