"""Keeping the pipeline running and its output in order: the scheduler (schedule.py), what it reports (status.py),
one run at a time (run_lock.py), what a run did (run_summary.py), and taking versions out of service (rollback.py).

May import definition.configs (to find the pipeline's folders), components.ingest.landing, components.pusher and
serving.layout; never runners/: a cycle is a child `signflow run` process, not a call.
"""
