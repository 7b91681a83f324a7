// Logging through spdlog. The level comes from SPATTN_LOG_LEVEL (trace, debug, info,
// warn, error, critical, off; default warn) on first use. Kernel choices, cache
// hits/misses and compile times are logged at debug level.
#pragma once

#include <spdlog/spdlog.h>

namespace spattn::log {

// The library's logger (stderr, name "spattn").
spdlog::logger& logger();

template <typename... Args>
void trace(spdlog::format_string_t<Args...> fmt, Args&&... args) { logger().trace(fmt, std::forward<Args>(args)...); }
template <typename... Args>
void debug(spdlog::format_string_t<Args...> fmt, Args&&... args) { logger().debug(fmt, std::forward<Args>(args)...); }
template <typename... Args>
void info(spdlog::format_string_t<Args...> fmt, Args&&... args) { logger().info(fmt, std::forward<Args>(args)...); }
template <typename... Args>
void warn(spdlog::format_string_t<Args...> fmt, Args&&... args) { logger().warn(fmt, std::forward<Args>(args)...); }
template <typename... Args>
void error(spdlog::format_string_t<Args...> fmt, Args&&... args) { logger().error(fmt, std::forward<Args>(args)...); }

}  // namespace spattn::log
