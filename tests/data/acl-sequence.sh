# POSIX ACL steps whose output must be the same on genfs as on ext4 (tests/local_fs.rs runs
# this in a directory of each, as root, with the user nobody (65534) and the group 1).
set -e
umask 022
show() { for p in "$@"; do echo "== $p $(stat -c '%A %G' "$p")"; getfacl -cpn "$p"; done; }
# A named user sets the mask, which is the mode's group part; m:: and chmod keep them in step.
touch f; setfacl -m u:65534:rw f; show f
setfacl -m m::r f; show f
chmod 750 f; show f
chmod 664 f; show f
setfacl -b f; show f
touch plain; setfacl -m u::rwx,g::r,o::- plain; show plain
# The kernel enforces them.
echo secret > secret; chmod 600 secret
runuser -u nobody -- cat secret 2>/dev/null || echo "nobody: denied"
setfacl -m u:65534:r secret; runuser -u nobody -- cat secret
setfacl -x u:65534 secret; runuser -u nobody -- cat secret 2>/dev/null || echo "nobody: denied again"
# Default ACLs are inherited by files, directories and nodes, the umask left out.
mkdir d; setfacl -d -m u:65534:rwx,g::rx,o::- d; show d
touch d/new; mkdir d/sub; mkfifo d/fifo; show d/new d/sub d/fifo
(umask 077; touch d/masked; mkdir d/maskeddir); show d/masked d/maskeddir
# A setgid directory with an ACL, written by a user who is not in its group.
mkdir sg; chgrp 1 sg; chmod 2775 sg; setfacl -m u:65534:rwx sg; setfacl -d -m g::rwx,m::rwx sg; show sg
runuser -u nobody -- sh -c 'umask 022; touch sg/f2; mkdir sg/s2; echo x > sg/x'
show sg/f2 sg/s2 sg/x
# An access ACL set by a user outside the file's group drops setgid.
chown 65534:1 sg/x; chmod 2775 sg/x
runuser -u nobody -- setfacl -m u:65534:rwx sg/x; show sg/x
