#!/bin/sh
cat /app/greeting.txt
