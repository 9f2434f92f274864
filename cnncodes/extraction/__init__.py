"""Extraction's parts behind :mod:`cnncodes.extract`: runtime, decode, fold, loop, ray_engine."""
