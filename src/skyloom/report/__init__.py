"""Run reports: `skyloom report RUN_DIR` → a self-contained report.html with the run's figures and tables."""
