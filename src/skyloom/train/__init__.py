"""skyloom.train"""
