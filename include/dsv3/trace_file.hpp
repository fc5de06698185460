// dsv3/trace_file.hpp — moved to tools/trace_file.hpp (the tools live in tools/); kept so that existing #includes compile.
#pragma once

#include "tools/trace_file.hpp"
