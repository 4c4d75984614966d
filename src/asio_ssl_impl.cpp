// Asio's TLS layer compiled once (BOOST_ASIO_SEPARATE_COMPILATION), as asio_impl.cpp does
// for the rest: only the download client's https:// uses it.
#include <boost/asio/ssl/impl/src.hpp>
