"""`thickets serve`: the vote of a run's experts behind OpenAI's API.

voter: the ensemble as one model; batcher: requests answered together on one worker thread;
app: the HTTP routes; server: checks, loading and running.
"""
