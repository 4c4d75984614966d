# Packaging (issue 7): the systemd unit, the default config, the docs, and a
# Debian package built with CPack (`cpack -G DEB` or `ninja package` in the
# build dir). fleetyd and fleety themselves are installed by src/app
# (sbin, bin: /usr/sbin and /usr/bin in the package).

set(_pkg ${PROJECT_SOURCE_DIR}/packaging)

# Absolute destinations: Debian wants the unit and the config here whatever
# the prefix (a .deb's prefix is /usr, and /usr/etc is not a place).
install(FILES ${_pkg}/fleetyd.service DESTINATION /lib/systemd/system)
install(FILES ${_pkg}/fleety.toml DESTINATION /etc/fleety)
install(FILES README.md docs/install.md docs/configuration.md docs/paths.md
              docs/interception.md docs/get.md docs/architecture.md
        DESTINATION share/doc/fleety)
install(FILES ${_pkg}/debian/copyright DESTINATION share/doc/fleety)

set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGE_NAME fleety)
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_PACKAGE_CONTACT "fleety maintainers <fleety@localhost>")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY
    "multipath daemon: Wi-Fi + cellular bandwidth for unmodified apps")
set(CPACK_PACKAGE_DESCRIPTION
    "fleetyd splits large HTTP downloads into byte ranges fetched over every\n\
path at once (Wi-Fi, cellular, wired), each from its own ISP's CDN, and\n\
relays other TCP on the path that meets the app's QoS class. The fleety\n\
CLI runs apps through it and shows paths, flows and statistics.")
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_SECTION net)
set(CPACK_DEBIAN_PACKAGE_PRIORITY optional)
# Depends: from the binaries' shared libraries (dpkg-shlibdeps, in dpkg-dev,
# which build-essential pulls in).
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
# Without debug info: the RelWithDebInfo binaries are ~80 MB each.
set(CPACK_STRIP_FILES ON)
# systemd only to run it as a service; nftables' CLI for `nft list` when
# debugging interception (fleetyd itself links libnftables).
set(CPACK_DEBIAN_PACKAGE_RECOMMENDS "systemd, nftables")
# CPack marks no conffile by itself: dpkg must not overwrite an edited
# /etc/fleety/fleety.toml on upgrade. Scripts: daemon-reload, stop on
# remove; never start (see packaging/debian/postinst).
set(CPACK_DEBIAN_PACKAGE_CONTROL_EXTRA
    ${_pkg}/debian/conffiles ${_pkg}/debian/postinst
    ${_pkg}/debian/prerm ${_pkg}/debian/postrm)
# 0755 for the scripts, 0644 for conffiles, whatever the checkout's modes.
set(CPACK_DEBIAN_PACKAGE_CONTROL_STRICT_PERMISSION ON)
include(CPack)

# Builds the .deb into a temporary dir and checks its contents; never
# installs it.
add_test(NAME packaging
         COMMAND ${PROJECT_SOURCE_DIR}/tests/packaging/package_test.sh
                 ${PROJECT_BINARY_DIR} ${PROJECT_SOURCE_DIR})
set_tests_properties(packaging PROPERTIES LABELS packaging TIMEOUT 300)

# The packaged unit under systemd as PID 1 (systemd-nspawn, loopback only): install,
# start, status, metrics, proxy, capabilities, a broken config, stop, restart, purge.
# Builds the .deb into a temporary dir first; the Debian root it boots is cached in
# /var/cache/fleety-nspawn (debootstrapped from the archive on the first run).
add_test(NAME packaging.systemd
         COMMAND bash -c "set -euo pipefail; t=$(mktemp -d /tmp/fleety-systemd-test.XXXXXX); trap 'rm -rf \"$t\"' EXIT; cpack -G DEB --config '${PROJECT_BINARY_DIR}/CPackConfig.cmake' -B \"$t\" >\"$t/cpack.log\" 2>&1 || { cat \"$t/cpack.log\"; exit 1; }; '${PROJECT_SOURCE_DIR}/tests/packaging/systemd_boot_test.sh' \"$t\"/*.deb")
set_tests_properties(packaging.systemd PROPERTIES LABELS packaging TIMEOUT 900 RESOURCE_LOCK systemd)
