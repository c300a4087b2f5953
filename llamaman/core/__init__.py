"""The ground every package stands on: settings, the database and its tables, events, instance states,
runtime settings, secrets, log redaction, who is asking, and the Exchange record of one proxied request."""
