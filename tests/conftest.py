import os
import sys

# Lets test modules import the float64 reference (tests/reference.py).
sys.path.insert(0, os.path.dirname(__file__))
