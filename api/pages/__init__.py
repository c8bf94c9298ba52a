"""Pages for people: the playground and the API docs."""
