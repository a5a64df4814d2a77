#!/usr/bin/env bash
# Installs a software Vulkan driver (Mesa lavapipe) so the GPU tests run on machines
# without a GPU. Idempotent: does nothing when a Vulkan ICD is already installed.
set -euo pipefail

if compgen -G "/usr/share/vulkan/icd.d/*.json" > /dev/null \
    || compgen -G "/etc/vulkan/icd.d/*.json" > /dev/null; then
    echo "gpu-setup: Vulkan driver present: $(ls /usr/share/vulkan/icd.d/ /etc/vulkan/icd.d/ 2>/dev/null | tr '\n' ' ')"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# mesa-vulkan-drivers brings lavapipe (llvmpipe) and the Vulkan loader (libvulkan1).
$SUDO apt-get install -y -qq --no-install-recommends mesa-vulkan-drivers libvulkan1
echo "gpu-setup: installed $(ls /usr/share/vulkan/icd.d/ | tr '\n' ' ')"
