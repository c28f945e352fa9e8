#!/usr/bin/env bash
# Builds the release binaries and the container image `rampart:latest`, with no registry: the
# image is `FROM scratch` holding only `rampart`, `rampartctl` (the health probe), the shared
# libraries `ldd` says they load, the loader, and the files a non-root user and name lookups need.
#
# Usage: deploy/build-image.sh [TAG]       (default rampart:latest)
#
# Steps: `cargo build --release -p rampart` (the two binaries and what they use, not the whole
# workspace); stripped copies of both in a root filesystem under target/image/; a Dockerfile
# beside it; `docker build`. Fails if the image is larger than 60 MB. The image:
#   entry point   /usr/local/bin/rampart (flags after the image name go to it)
#   user          rampart, uid and gid 10001
#   volume        /var/lib/rampart, the data directory /var/lib/rampart/data inside it (a
#                 subdirectory, so that a filesystem's lost+found at the volume's root is no
#                 member's data)
#   environment   RAMPART_DATA_DIR, RAMPART_LISTEN_CLIENT_URLS=http://0.0.0.0:2379,
#                 RAMPART_LISTEN_PEER_URLS=http://0.0.0.0:2380; every other RAMPART_* variable
#                 or flag as `rampart --help` lists them (etcd's ETCD_X variables are read too)
set -euo pipefail

cd "$(dirname "$0")/.."
tag="${1:-rampart:latest}"
max_bytes=$((60 * 1000 * 1000))
uid=10001

echo "--- build-image: cargo build --release -p rampart"
cargo build --release -p rampart
bin_dir="${CARGO_TARGET_DIR:-target}/release"
context="${CARGO_TARGET_DIR:-target}/image"

echo "--- build-image: root filesystem in $context"
rm -rf "$context"
root="$context/rootfs"
mkdir -p "$root/usr/local/bin" "$root/etc" "$root/var/lib" "$root/tmp"
chmod 1777 "$root/tmp"
# The volume's directory, copied on its own so that it is owned by the member's user: COPY
# gives --chown to what it copies, not to directories that already exist.
mkdir -p "$context/volume/rampart"
for bin in rampart rampartctl; do
    # The release profile keeps line tables for backtraces (debug = 1); the image does not
    # need them, and they are most of the binary's size.
    strip --strip-debug -o "$root/usr/local/bin/$bin" "$bin_dir/$bin"
done

# Every library the binaries load, and the loader, at the paths ldd names (the binaries look
# for them there). `cp -L` copies what a symlink points to, under the symlink's name.
# Its lines are "\tlibc.so.6 => /lib/.../libc.so.6 (0x...)" and "\t/lib64/ld-linux... (0x...)".
libs=$(for bin in rampart rampartctl; do ldd "$root/usr/local/bin/$bin"; done |
    awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' | sort -u)
for lib in $libs; do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
done

# The user the member runs as, so that files it writes have an owner with a name; no shell.
cat > "$root/etc/passwd" <<PASSWD
root:x:0:0:root:/root:/sbin/nologin
rampart:x:$uid:$uid:Rampart:/var/lib/rampart:/sbin/nologin
PASSWD
cat > "$root/etc/group" <<GROUP
root:x:0:
rampart:x:$uid:
GROUP
# glibc resolves names through /etc/hosts then DNS (Docker's and Kubernetes' resolvers): the
# other members are found by name.
echo 'hosts: files dns' > "$root/etc/nsswitch.conf"

cat > "$context/Dockerfile" <<DOCKERFILE
FROM scratch
COPY rootfs/ /
COPY --chown=$uid:$uid volume/ /var/lib/
ENV RAMPART_DATA_DIR=/var/lib/rampart/data \\
    RAMPART_LISTEN_CLIENT_URLS=http://0.0.0.0:2379 \\
    RAMPART_LISTEN_PEER_URLS=http://0.0.0.0:2380
USER $uid:$uid
WORKDIR /var/lib/rampart
VOLUME /var/lib/rampart
EXPOSE 2379 2380
ENTRYPOINT ["/usr/local/bin/rampart"]
DOCKERFILE

echo "--- build-image: docker build -t $tag"
docker build --quiet -t "$tag" "$context"

size=$(docker image inspect --format '{{.Size}}' "$tag")
echo "--- build-image: $tag is $((size / 1000 / 1000)) MB ($size bytes)"
if [ "$size" -gt "$max_bytes" ]; then
    echo "build-image: $tag is over 60 MB" >&2
    exit 1
fi
