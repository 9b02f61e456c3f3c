"""Targets: the CRMs stagesync writes to."""
