"""The chaos harness: workers killed and servers restarted under load.

``python -m integration.chaos BACKEND`` runs the full scenario for one
backend (postgres, mariadb or sqlite) and prints a report; ``--smoke`` runs
the small version that CI runs. See ``harness.py`` for what is checked.
"""
