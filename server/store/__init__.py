"""Where conversations live: the ``ConversationStore`` protocol, SQLite (the default) and memory.

A store keeps each conversation whole and knows who runs it: a claim with an owner and a lease that
the owner renews, so two processes never run one conversation and a crashed owner's claim expires.
Stores never run anything; the bridge's jobs claim, save and release.
"""
