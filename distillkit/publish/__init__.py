"""Stage 5: model and dataset cards, Hub upload, and the HTML run report."""
