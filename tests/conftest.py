import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
OFFICIAL_WHEELS = os.path.join(ROOT, "..", "shared", "affectgpt-emotion-wheel")
