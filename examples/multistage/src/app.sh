#!/bin/sh
echo "app $(cat /app/VERSION)"
