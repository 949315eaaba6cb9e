"""spooler"""
