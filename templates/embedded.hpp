// The kernel templates compiled into libspattn (generated at build time from
// templates/*.cuh by cmake/EmbedTemplates.cmake).
#pragma once

#include <span>
#include <string_view>

namespace spattn::templates {

struct EmbeddedTemplate {
  std::string_view name;    // include name, e.g. "spattn/forward.cuh"
  std::string_view text;    // file contents
  std::string_view sha256;  // hex digest of the contents
};

std::span<const EmbeddedTemplate> all();
// The template with this include name; throws kInternal if there is none.
const EmbeddedTemplate& get(std::string_view name);

}  // namespace spattn::templates
