"""Shared Streamlit helpers for the pages (not a page itself: Streamlit lists only views/*.py)."""
