"""skyloom.eval"""
