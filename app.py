"""CUD Explorer — the entry point: `make run` (or `streamlit run app.py`) starts here.

It only declares the pages (`st.navigation`): Home (pick model, dataset and settings; start and watch
jobs) and the result pages. All computation lives in `cud_core`; the pages in `views/` show the
results. The server listens on localhost (.streamlit/config.toml); paths named in the browser must
lie in the allowed roots (views/ui/paths.py: `CUD_ALLOWED_ROOTS` or `streamlit run app.py -- --allow-root PATH`).
"""
import streamlit as st

from views.ui.state import PAGE_FILES

st.set_page_config(page_title="CUD Explorer", page_icon="🧭", layout="wide")
st.navigation([st.Page(path, title=title, icon=icon, url_path=url, default=url == "")
               for path, title, icon, url in PAGE_FILES]).run()
