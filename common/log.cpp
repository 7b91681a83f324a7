#include "common/log.hpp"

#include <spdlog/sinks/stdout_color_sinks.h>

#include <cstdlib>
#include <string>

namespace spattn::log {

spdlog::logger& logger() {
  static std::shared_ptr<spdlog::logger> instance = [] {
    auto sink = std::make_shared<spdlog::sinks::stderr_color_sink_mt>();
    auto l = std::make_shared<spdlog::logger>("spattn", sink);
    l->set_pattern("[spattn %l] %v");
    spdlog::level::level_enum level = spdlog::level::warn;
    if (const char* env = std::getenv("SPATTN_LOG_LEVEL"); env && *env) {
      level = spdlog::level::from_str(env);
      // from_str answers "off" for anything it does not know; say so instead of going silent.
      if (level == spdlog::level::off && std::string(env) != "off") {
        level = spdlog::level::warn;
        l->set_level(level);
        l->warn("SPATTN_LOG_LEVEL='{}' is not one of trace, debug, info, warn, error, critical, off; using warn", env);
      }
    }
    l->set_level(level);
    return l;
  }();
  return *instance;
}

}  // namespace spattn::log
