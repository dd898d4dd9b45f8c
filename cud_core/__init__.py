"""CUD Explorer engine: circuits, circuit-guided unlearning difficulty, unlearning, storage.

No Streamlit import anywhere in this package; the app in app.py / views/ calls these modules.
"""
__version__ = "0.1.0"
