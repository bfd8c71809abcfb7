"""`skyloom demo`: the two-stage Skywork recipe end to end at tiny scale on real text shipped with the install."""
