"""Planning a job before any weight is loaded: the model's sizes from its config and headers
(`model_facts`), each phase's memory (`memory_plan`), and the worker pool it goes to (`pools`).
Pure Python: the API plans at submission, the worker again before it loads."""
