"""QueueChat's command line: `queuechat serve | worker | models | chat | bench | flower`."""
