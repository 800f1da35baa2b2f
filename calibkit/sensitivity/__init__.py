"""Where the accuracy goes and what it costs to get it back: the leave-one-out layer ranking
(:mod:`.ranking`, run from where each variant differs, :mod:`.suffix`) and the accuracy-budget search
(:mod:`.budget`)."""
