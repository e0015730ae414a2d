"""README.md's generated blocks (gallery, seed reconciliation) are what the code prints today."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_readme_blocks_are_up_to_date():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "render_readme.py"), "--check"], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr


def test_check_fails_on_a_stale_block(tmp_path):
    stale = tmp_path / "README.md"
    text = (ROOT / "README.md").read_text().replace("1,557,611,200 parameters", "1,500,000,000 parameters", 1)
    stale.write_text(text)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "render_readme.py"), "--check", "--readme", str(stale)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1 and "out of date" in proc.stderr
