"""Plumbing every layer uses (torch-free): atomic files and displayable names, JSON-ready values,
progress reports, lazy package faces."""
