"""Rewrite the kernel sources for the host emulation: dynamic shared memory and <<<>>> launches become calls."""
import re
import sys

src, dst = sys.argv[1], sys.argv[2]
text = open(src).read()
text, n_smem = re.subn(r"extern __shared__ __align__\(\d+\) unsigned char (\w+)\[\];",
                       r"unsigned char* \1 = emu_block_smem();", text)
text, n_launch = re.subn(r"(\w+)<<<(.*?)>>>\((.*?)\);", r"emu_launch(\1, \2, \3);", text)
if n_launch == 0:
    sys.exit(f"{src}: no kernel launch found")
open(dst, "w").write(f'#line 1 "{src}"\n' + text)
