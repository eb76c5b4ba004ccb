"""Errands: titles, conversions, webhook timers and website monitors in one service."""
